fn main() { println!("demo: not yet"); }
