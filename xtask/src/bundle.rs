pub fn run(_args: &[String]) -> Result<(), String> {
    Err("bundle: not written yet".into())
}
