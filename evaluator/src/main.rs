//! `pbflags-evaluator`: parse arguments, run the subcommand, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;
use pbflags_evaluator::cli::{Cli, Command};
use pbflags_evaluator::{list, watcher};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Descriptors(args) => match watcher::load_file(&args.descriptors) {
            Ok(snapshot) => {
                print!("{}", list::render(&snapshot, args.json));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}
