//! Configuration files of the aggregator and the collector, and the collector's inventory:
//! the first byte picks which, the rest is the TOML.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, rest)) = data.split_first() else { return };
        let Ok(text) = std::str::from_utf8(rest) else { return };
        match which % 3 {
            0 => {
                if let Ok(config) = pollux_aggregator::config::AggregatorConfig::from_toml(text) {
                    let _ = config.validate();
                }
            }
            1 => {
                if let Ok(config) = pollux_model::config::from_toml::<pollux_collector::config::CollectorConfig>(text) {
                    let _ = config.validate();
                }
            }
            _ => {
                let _ = pollux_collector::inventory::parse("fuzz.toml", text);
            }
        }
    });
}
