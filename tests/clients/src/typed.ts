// Operations from operations/*.graphql, typed by graphql-codegen (codegen.ts):
// `tsc` fails here when the schema and the operations drift apart.
import type { ApolloClient } from "@apollo/client";
import {
  AttachmentDocument,
  AttachmentsPageDocument,
  ContractDocument,
  DeleteDocument,
  UploadBatchDocument,
  UploadDocument,
  UploadFileDocument,
  type AttachmentsPageQuery,
  type UploadAttachmentInput,
  type UploadMutation,
} from "../generated/graphql.js";

export type Uploaded = UploadMutation["uploadAttachment"];

export async function upload(client: ApolloClient, input: UploadAttachmentInput): Promise<Uploaded> {
  const { data } = await client.mutate({ mutation: UploadDocument, variables: { input } });
  const attachment = data!.uploadAttachment;
  const size: number = attachment.byteSize;
  const sha256: string = attachment.sha256;
  // @ts-expect-error: not selected by the Upload operation
  void attachment.createdBy;
  void size, sha256;
  return attachment;
}

export async function uploadBatch(client: ApolloClient, input: UploadAttachmentInput[]) {
  const { data } = await client.mutate({ mutation: UploadBatchDocument, variables: { input } });
  return data!.uploadAttachments.map((a) => ({ id: a.id, filename: a.filename, sha256: a.sha256 }));
}

export async function uploadFile(client: ApolloClient, ownerId: string, file: File, sha256?: string) {
  const { data } = await client.mutate({
    mutation: UploadFileDocument,
    variables: { input: { ownerType: "contract", ownerId, file, sha256 } },
  });
  return data!.uploadAttachmentFile;
}

export async function contract(client: ApolloClient, id: string) {
  const { data } = await client.query({ query: ContractDocument, variables: { id }, fetchPolicy: "network-only" });
  const { totalCount, pageInfo, nodes } = data!.attachments;
  const more: boolean = pageInfo.hasNextPage;
  const cursor: string | null | undefined = pageInfo.endCursor;
  void more, cursor;
  return { totalCount, filenames: nodes.map((n) => n.filename), urls: nodes.map((n) => n.url) };
}

/** Every attachment of an owner, page by page (Relay cursors). */
export async function allPages(client: ApolloClient, ownerType: string, ownerId: string, first: number) {
  const ids: string[] = [];
  let after: string | null | undefined = null;
  for (;;) {
    const { data } = await client.query({
      query: AttachmentsPageDocument,
      variables: { ownerType, ownerId, first, after },
      fetchPolicy: "network-only",
    });
    const page: AttachmentsPageQuery["attachments"] = data!.attachments;
    for (const edge of page.edges) ids.push(edge.node.id);
    if (!page.pageInfo.hasNextPage) return { ids, totalCount: page.totalCount };
    after = page.pageInfo.endCursor;
  }
}

export async function get(client: ApolloClient, id: string) {
  const { data } = await client.query({ query: AttachmentDocument, variables: { id }, fetchPolicy: "network-only" });
  const attachment = data!.attachment; // Attachment | null
  const createdAt: string | undefined = attachment?.createdAt;
  void createdAt;
  return attachment ?? null;
}

export async function remove(client: ApolloClient, id: string): Promise<string> {
  const { data } = await client.mutate({ mutation: DeleteDocument, variables: { id } });
  return data!.deleteAttachment;
}
