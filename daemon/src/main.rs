//! The `driftwatch` binary: parses the command line and runs the command.

use clap::Parser;
use driftwatch::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    // Environment for llama.cpp, set while this is the only thread.
    driftwatch::engine::make_kquant_products_alike();
    // A command whose reader goes away (`driftwatch report | head`) ends as `cat` does, by
    // SIGPIPE, instead of panicking in `println!`. The daemon keeps Rust's default (ignored):
    // it must outlive any client. Sockets are written with MSG_NOSIGNAL either way.
    cli::sigpipe_ends_the_process(true);
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        cli::sigpipe_ends_the_process(false);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::Exit>() {
            Some(exit) => {
                eprintln!("{}", exit.message);
                std::process::ExitCode::from(exit.code)
            }
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
