//! `schema.graphql` is what `attache schema` prints: clients run codegen from it.

#[test]
fn checked_in_schema_matches_the_server() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let checked_in = std::fs::read_to_string(&path).expect("schema.graphql");
    assert!(
        checked_in == attache::graphql::sdl(),
        "schema.graphql differs from the server's schema: run `cargo run -- schema > schema.graphql`"
    );
}
