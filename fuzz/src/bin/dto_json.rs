//! The JSON DTO decoder and the validation behind `PUT /api/v1/dto`: never a panic, and a DTO
//! that decodes and validates survives encoding and decoding again unchanged in content.
fn main() {
    let catalog = pollux_model::Catalog::builtin();
    let limits = pollux_model::Limits { max_records: 1000, ..Default::default() };
    afl::fuzz!(|data: &[u8]| {
        if let Ok(dto) = pollux_model::codec::json::decode(data, &catalog, &limits) {
            if dto.validate(&catalog, &limits, 1_763_831_000).is_ok() {
                let again =
                    pollux_model::codec::json::decode(&pollux_model::codec::json::encode(&dto), &catalog, &limits)
                        .expect("a valid DTO re-encodes to valid JSON");
                assert_eq!(again.digest(), dto.digest(), "the content survives a round trip");
            }
        }
    });
}
