//! `pbflags-evaluator`: parse arguments, run the subcommand, map errors to exit codes
//! (64 for bad configuration, 1 for other failures).

use std::process::ExitCode;

use clap::Parser as _;
use pbflags_evaluator::cli::{Cli, Command};
use pbflags_evaluator::commands::{self, Failure};
use pbflags_evaluator::{list, watcher};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Descriptors(args) => watcher::load_file(&args.descriptors)
            .map(|s| list::render(&s, args.json))
            .map_err(Failure::from),
        command => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                match &command {
                    Command::Migrate(a) => commands::migrate(a).await,
                    Command::Sync(a) => commands::sync(a).await,
                    Command::Flags(a) => commands::flags(a).await,
                    Command::Descriptors(_) => unreachable!("handled above"),
                }
            }),
            Err(e) => Err(Failure::from(e)),
        },
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
