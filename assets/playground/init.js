// Starts GraphiQL. A file of its own, so that the page runs no inline script
// (Content-Security-Policy: script-src 'self'); served by src/http/playground.rs.
// In development mode (no JWT_SECRET, no JWT_PUBLIC_KEY_FILE) attache puts a token for
// tenant `dev` into <meta name="attache-dev-token">, and the Headers tab starts with
// it. Otherwise paste a token into the Headers tab: {"Authorization": "Bearer <token>"}
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="attache-dev-token"]');
  var token = meta ? meta.getAttribute("content") : "";
  var headers = token
    ? JSON.stringify({ Authorization: "Bearer " + token }, null, 2)
    : '{"Authorization": "Bearer <token>"}';
  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      // The page's own address: behind a proxy under a path prefix
      // (`https://example.com/files/graphql`) `/graphql` is another service's.
      fetcher: GraphiQL.createFetcher({
        url: window.location.origin + window.location.pathname,
      }),
      defaultHeaders: headers,
      defaultEditorToolsVisibility: true,
    })
  );
})();
