//! The `sharedstate` command.

fn main() {
    eprintln!("sharedstate: not built yet");
    std::process::exit(2);
}
