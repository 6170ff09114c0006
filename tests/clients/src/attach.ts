import { ApolloClient, InMemoryCache, HttpLink, gql } from "@apollo/client";

export function createClient(uri: string, token: string) {
  return new ApolloClient({
    link: new HttpLink({
      uri, // "http://127.0.0.1:8080/graphql"
      headers: { Authorization: `Bearer ${token}` },
    }),
    cache: new InMemoryCache(),
  });
}

const UPLOAD = gql`
  mutation Upload($input: UploadAttachmentInput!) {
    uploadAttachment(input: $input) { id filename url }
  }
`;

type UploadResult = { uploadAttachment: { id: string; filename: string; url: string } };

export async function attach(client: ApolloClient, file: File, contractId: string) {
  // In a browser: FileReader.readAsDataURL(file); a data: URL is accepted as is.
  const base64 = `data:${file.type};base64,${Buffer.from(await file.arrayBuffer()).toString("base64")}`;
  const { data } = await client.mutate<UploadResult>({
    mutation: UPLOAD,
    variables: { input: { ownerType: "contract", ownerId: contractId, filename: file.name, base64 } },
  });
  return data!.uploadAttachment.url; // put it in <a href> or <img src>
}
