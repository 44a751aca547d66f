fn main() {
    std::process::exit(embedpipe::cli::main());
}
