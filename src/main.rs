mod conn;
mod error;

fn main() {}
