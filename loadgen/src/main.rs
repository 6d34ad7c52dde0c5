//! `wsedge-loadgen`: the storm generator (work in progress, see the project's issues).

fn main() {
    eprintln!("wsedge-loadgen: not implemented yet; see the project's loadgen issue");
    std::process::exit(2);
}
