use medgen_operators::curate::segment::SignalBuilder;
use medgen_operators::video::decode::Decoder;
use medgen_operators::video::{DecodeSpec, PixelFormat, Size};
#[test]
fn scratch() {
    for name in ["cityCC0.mpg", "cockatoo.mp4", "movie-hello.mp4", "carphone_pristine.mp4"] {
        let p = std::path::Path::new(".cache/samples").join(name);
        let dec = Decoder::open(
            &p,
            &DecodeSpec::all().with_size(Size::Fit { width: 64, height: 64 }).with_format(PixelFormat::Rgb),
        )
        .unwrap();
        let fps = dec.info().fps_f64();
        let mut b = SignalBuilder::new(1.0, fps);
        for f in dec {
            let f = f.unwrap();
            b.push(f.data(), f.width as usize, f.height as usize, f.pts_s, f.duration_s);
        }
        let s = b.finish(0, 0, fps).unwrap();
        let mut c = s.candidates.clone();
        c.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!(
            "{name}: sims {:?}\n  top candidates (t, d, ctx) {:?}",
            s.sims.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>(),
            &c[..c.len().min(3)]
        );
    }
}
