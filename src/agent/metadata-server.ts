// The metadata endpoint's HTTP server (SPEC §6.7), served by the agent on a socket bound inside the data-plane
// namespace on every address at the metadata port: that namespace holds only mvm's bridges, and nftables lets each
// guest reach only its own gateway's port. Until the namespace exists (mvm may make it at the first start), binding
// is retried.

import http from "node:http";
import type { Server } from "node:net";
import type { Logger } from "pino";
import { answerMetadata, type MetadataDeps } from "../core/use-cases/metadata.js";

export const METADATA_LISTEN_RETRY_MS = 10_000;

export interface MetadataServerOptions {
  deps: MetadataDeps;
  nodeId: string;
  /** A listening socket where guests reach the port; rejects while that cannot be had yet. */
  listen: () => Promise<Server>;
  logger: Logger;
  retryMs?: number;
}

export interface MetadataServer {
  /** Resolves once the endpoint serves (for tests and logs). */
  readonly serving: Promise<void>;
  close(): Promise<void>;
}

export function startMetadataServer(options: MetadataServerOptions): MetadataServer {
  const { deps, nodeId, logger } = options;
  const server = http.createServer((req, res) => {
    const request = {
      method: req.method ?? "GET",
      path: req.url ?? "/",
      localAddress: req.socket.localAddress ?? "",
      remoteAddress: req.socket.remoteAddress ?? "",
    };
    answerMetadata(deps, request, nodeId).then(
      (answer) => {
        res.writeHead(answer.status, { "content-type": answer.contentType, "cache-control": "no-store" });
        res.end(answer.body);
        logger.debug({ path: request.path, from: request.remoteAddress, status: answer.status, caller: answer.caller }, "metadata request");
      },
      (e: unknown) => {
        logger.error({ path: request.path, from: request.remoteAddress, err: e instanceof Error ? e.message : String(e) }, "metadata request failed");
        res.writeHead(500, { "content-type": "application/json" });
        res.end(`${JSON.stringify({ error: "internal error" })}\n`);
      },
    );
  });
  server.requestTimeout = 5_000;
  server.headersTimeout = 5_000;
  let closed = false;
  let socket: Server | null = null;
  let timer: NodeJS.Timeout | null = null;
  let markServing: () => void = () => undefined;
  const serving = new Promise<void>((resolve) => (markServing = resolve));
  const attempt = async () => {
    timer = null;
    try {
      const handle = await options.listen();
      if (closed) return void handle.close();
      socket = handle;
      server.listen(handle, () => {
        logger.info({ address: server.address() }, "metadata endpoint serving");
        markServing();
      });
    } catch (e) {
      if (closed) return;
      logger.warn({ err: e instanceof Error ? e.message : String(e) }, "metadata endpoint not serving yet; retrying");
      timer = setTimeout(() => void attempt(), options.retryMs ?? METADATA_LISTEN_RETRY_MS);
      timer.unref();
    }
  };
  void attempt();
  return {
    serving,
    async close() {
      closed = true;
      if (timer !== null) clearTimeout(timer);
      if (server.listening) {
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
      // The socket it was handed: closed too, or it would go on accepting connections nobody answers.
      if (socket?.listening) await new Promise<void>((resolve) => socket!.close(() => resolve()));
    },
  };
}
