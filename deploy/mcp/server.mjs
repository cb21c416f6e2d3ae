// The MCP example's server: the official MCP TypeScript SDK (npm @modelcontextprotocol/sdk,
// pinned in package.json), Streamable HTTP transport, stateless (a server per request). It has
// no OAuth code of its own: certbound, in front of it, decides every request (the token, its
// binding to the client's certificate or DPoP key, its audience and scopes) and serves the
// RFC 9728 metadata. Plain HTTP on loopback: only the proxy in front of it reaches it.
//
// Two MCP endpoints, so certbound's path rules can ask different scopes of them:
//   /mcp        tools `echo` and `whoami` (certbound: scope mcp:tools)
//   /mcp/admin  tool `audit` (certbound: scope mcp:admin, the 403 insufficient_scope step-up)
//
// Run from the repository's root after scripts/install-tools.sh:
//
//   node deploy/mcp/server.mjs [--listen 127.0.0.1:8080]
//
// It prints `listening http://ADDRESS` once ready, and one line per request (method, path,
// status, and which of the Authorization and DPoP headers reached it: certbound removes both).
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

const { values: options } = parseArgs({
  options: { listen: { type: 'string', default: '127.0.0.1:8080' } },
});

let calls = 0;
const text = (value) => ({ content: [{ type: 'text', text: value }] });

function mcpServer(endpoint, request) {
  const server = new McpServer({ name: `certbound-example${endpoint}`, version: '1.0.0' });
  if (endpoint === '/mcp') {
    server.registerTool(
      'echo',
      { description: 'Answers with its input.', inputSchema: { message: z.string() } },
      async ({ message }) => {
        calls += 1;
        return text(message);
      },
    );
    server.registerTool(
      'whoami',
      { description: 'The client certbound let in (its client_id claim, as certbound forwarded it).' },
      async () => {
        calls += 1;
        return text(request.headers['x-certbound-client-id'] ?? '(none)');
      },
    );
  } else {
    server.registerTool(
      'audit',
      { description: 'How many tool calls this server has answered (an admin tool: scope mcp:admin).' },
      async () => text(`${calls} tool calls`),
    );
  }
  return server;
}

const http = createServer(async (request, response) => {
  const path = new URL(request.url, 'http://upstream').pathname;
  response.on('finish', () => {
    const credentials = ['authorization', 'dpop'].filter((name) => request.headers[name] !== undefined);
    console.log(`${request.method} ${path} ${response.statusCode} credentials=${credentials.join('+') || 'none'}`);
  });
  if (path !== '/mcp' && path !== '/mcp/admin') {
    response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  if (request.method !== 'POST') {
    // Stateless: no server-to-client stream (GET) and no session to end (DELETE).
    response.writeHead(405, { allow: 'POST', 'content-type': 'text/plain' }).end('POST only\n');
    return;
  }
  const server = mcpServer(path, request);
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  response.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(request, response);
  } catch (error) {
    console.log(`error: ${error.message}`);
    if (!response.headersSent) {
      response.writeHead(500, { 'content-type': 'text/plain' }).end('internal error\n');
    }
  }
});

const [host, port] = options.listen.split(':');
http.listen(Number(port), host, () => console.log(`listening http://${options.listen}`));
const stop = () => {
  http.close(() => process.exit(0));
  http.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
