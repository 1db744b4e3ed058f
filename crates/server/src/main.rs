//! The `confero` binary: everything lives in the library so tests can reach it.

/// mimalloc returns the memory a flood made the server take once it is freed (glibc's
/// allocator kept it: 1.1 GiB after a REGISTER flood never came back); see
/// `docs/security.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    confero_server::main()
}
