//! The GraphQL request path before execution, on arbitrary bytes: the JSON body
//! (a request or a batch array), the document bounds, the parser and the
//! measurement of fragments. Nothing may panic, overflow the stack or run long.
#![no_main]

use attache::config::QueryLimits;
use attache::graphql::ParsedQueries;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let limits = QueryLimits::default();
    let batch = serde_json::from_slice::<async_graphql::BatchRequest>(body).or_else(|_| {
        // Arbitrary text as the query itself, as `GET /graphql?query=` carries it.
        std::str::from_utf8(body)
            .map(|query| async_graphql::BatchRequest::Single(async_graphql::Request::new(query)))
    });
    if let Ok(mut batch) = batch {
        let _ = ParsedQueries::default().prepare(&mut batch, &limits, 20);
    }
});
