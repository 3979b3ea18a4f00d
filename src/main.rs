//! The binary: everything is in `mirrorctl::app`.

fn main() -> std::process::ExitCode {
    mirrorctl::app::main()
}
