use std::process::ExitCode;

use clap::Parser;

// The request path allocates small buffers constantly; mimalloc's thread
// caches beat glibc malloc there (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = server::Config::parse();
    if config.print_redis_acl {
        return print_redis_acl(&config);
    }
    server::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(server::run(config));
    // Whatever is still running (idle connections, reconnect timers) is
    // abandoned rather than awaited, so shutdown stays within its budget.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the Display of each error carries its
            // cause, and the guide's section says what to do.
            eprintln!(
                "error: {e} (see {}#{})",
                server::TROUBLESHOOTING,
                e.help_anchor()
            );
            ExitCode::FAILURE
        }
    }
}

/// `--print-redis-acl`: the rule on standard output, how to use it on
/// standard error.
fn print_redis_acl(config: &server::Config) -> ExitCode {
    match config
        .clone()
        .with_secret_files()
        .map_err(server::Error::Config)
        .and_then(|c| c.resolve())
    {
        Ok(settings) => {
            let (rule, help) = server::acl::print(&settings);
            eprint!("{help}");
            println!("{rule}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
