//! `bpfdb [OPTIONS] DATA_DIR MOUNTPOINT`: loads the eBPF engine, recovers
//! the database from DATA_DIR and mounts it as a directory. Without `-f` the
//! command returns once the mount is live and a daemon serves it; `umount`,
//! SIGINT and SIGTERM end it, after a checkpoint.

use bpfdb_fsd::daemon::cli::{Cli, Settings};
use bpfdb_fsd::daemon::start::start;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::from_cli(&cli) {
        Ok(s) => s,
        Err(msg) => Cli::command().error(ErrorKind::ValueValidation, msg).exit(),
    };
    std::process::exit(start(&settings));
}
