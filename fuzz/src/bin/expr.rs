//! The expression language of customized metrics (`expr = "value * 8"`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(expr) = pollux_model::expr::Expr::parse(text) {
                for value in [0.0, 1.0, -1.5, 1e308, f64::MIN_POSITIVE] {
                    let _ = expr.eval(value);
                }
            }
        }
    });
}
