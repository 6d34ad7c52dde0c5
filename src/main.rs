//! The `wsedge` binary.

fn main() {
    eprintln!("wsedge: the server is not built yet");
    std::process::exit(2);
}
