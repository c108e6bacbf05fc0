//! `medgen check` and `medgen graph`.

use super::EX_CONFIG;
use clap::{Args, ValueEnum};
use medgen::graph::{self, Diagnostic, Plan, Severity};
use medgen_operators::registry::Registry;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Graph files to validate.
    #[arg(required = true)]
    pub graphs: Vec<PathBuf>,
    /// Treat warnings (e.g. a node whose output goes nowhere) as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// The graph file.
    pub graph: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Load a graph file, printing its warnings; on errors print them and return Err(78).
pub fn load_or_report(path: &Path, registry: &Registry) -> Result<Plan, i32> {
    match graph::load(path, registry) {
        Ok(plan) => {
            print_diagnostics(&plan.warnings);
            Ok(plan)
        }
        Err(diags) => {
            print_diagnostics(&diags);
            let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
            eprintln!("{}: {} error(s); the graph was not run", path.display(), errors);
            Err(EX_CONFIG)
        }
    }
}

pub fn check(a: &CheckArgs) -> anyhow::Result<i32> {
    let registry = Registry::builtin();
    let mut code = 0;
    for path in &a.graphs {
        match load_or_report(path, &registry) {
            Ok(plan) => {
                if a.deny_warnings && !plan.warnings.is_empty() {
                    eprintln!("{}: {} warning(s) denied by --deny-warnings", path.display(), plan.warnings.len());
                    code = EX_CONFIG;
                } else {
                    println!("{}: ok ({} nodes)", path.display(), plan.nodes.len());
                }
            }
            Err(c) => code = c,
        }
    }
    Ok(code)
}

pub fn graph(a: &GraphArgs) -> anyhow::Result<i32> {
    let registry = Registry::builtin();
    let plan = match load_or_report(&a.graph, &registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let text = match a.format {
        GraphFormat::Dot => graph::render_dot(&plan),
        GraphFormat::Mermaid => graph::render_mermaid(&plan),
    };
    print!("{text}");
    Ok(0)
}
