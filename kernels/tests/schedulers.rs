//! The FlowMatch Euler and UniPC samplers against diffusers: schedules (timesteps, sigmas) for
//! 1, 2, 3 and 50 steps at shifts 3 and 5, and step-by-step trajectories on given model outputs.

use medgen_kernels::verify::{VerifyOptions, run};
use std::path::Path;

#[test]
fn every_scheduler_fixture_matches_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("flow_") {
            continue;
        }
        let r = run(&p, &VerifyOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for c in &r.checks {
            eprintln!("{name:28} {:16} abs {:.2e} rel {:.2e} {}", c.name, c.max_abs, c.max_rel, c.pass());
        }
        assert!(r.pass(), "{name}: {:?}", r.checks);
        assert!(r.checks.len() >= 3, "{name}: schedule and trajectory checked");
        seen += 1;
    }
    assert_eq!(seen, 16, "8 Euler and 8 UniPC fixtures");
}
