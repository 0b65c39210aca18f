//! The `litestream` binary: run the command line, print an error once, map it to an exit code.

fn main() {
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
