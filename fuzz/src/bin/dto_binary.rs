//! The binary DTO decoder (collectors' PUTs and every DTO file in the shared directory):
//! never a panic; a DTO that decodes re-encodes to the same bytes.
fn main() {
    let catalog = pollux_model::Catalog::builtin();
    let limits = pollux_model::Limits::default();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(dto) = pollux_model::codec::binary::decode(data, 100_000) {
            let _ = dto.validate(&catalog, &limits, 1_763_831_000);
            assert_eq!(pollux_model::codec::binary::encode(&dto), data, "decode then encode is the identity");
        }
    });
}
