//! `beacon-loadtest`: drives a running Beacon server with simulated devices and viewers.
fn main() {
    println!("beacon-loadtest: not built yet");
}
