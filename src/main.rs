//! The `litestream` binary: run the command line, print an error once, map it to an exit code.

fn main() {
    // Release builds abort on a panic (`panic = "abort"`). Elsewhere only the panicking
    // thread would unwind, leaving a daemon that answers /metrics but no longer replicates
    // that database, unnoticed by its supervisor: abort there too, after the usual message.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let code = match litestream::cli::run(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: "what: why: cause".
            eprintln!("{err:#}");
            1
        }
    };
    std::process::exit(code);
}
