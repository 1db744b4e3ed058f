//! The `confero` binary: everything lives in the library so tests can reach it.

fn main() -> std::process::ExitCode {
    confero_server::main()
}
