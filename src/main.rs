fn main() {
    let code = cutover::cli::main();
    std::process::exit(code);
}
