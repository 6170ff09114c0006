import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  // The checked-in SDL (`attache schema > schema.graphql`); ATTACHE_SCHEMA points elsewhere.
  schema: process.env.ATTACHE_SCHEMA ?? "../../schema.graphql",
  documents: "operations/*.graphql",
  generates: {
    "generated/graphql.ts": {
      plugins: ["typescript-operations", "typed-document-node"],
      config: {
        scalars: { DateTime: "string", Upload: "File | Blob" },
        strictScalars: true,
        useTypeImports: true,
      },
    },
  },
};

export default config;
