//! Customized metric family files: parsing, validation, and joining the catalog.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(family) = pollux_model::MetricFamily::from_toml(text) {
                let mut catalog = pollux_model::Catalog::builtin();
                let _ = catalog.add_custom(family);
            }
        }
    });
}
