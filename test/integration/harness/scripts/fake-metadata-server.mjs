// Fake instance metadata service, run by the harness inside the "metadata" network namespace.
// Plain JavaScript with node: imports only, so it runs without tsx under any uid. It answers
// every HTTP request 200 and echoes UDP datagrams; it must never bind outside its namespace,
// which is guaranteed by how it is started (`ip netns exec`), not by anything in here.
//
// usage: node fake-metadata-server.mjs <tcpPort,...> <udpPort> <udpAddress,...>
// Prints one JSON line {"ready":true,...} to stdout once every socket is listening.
import { createSocket } from "node:dgram";
import { createServer } from "node:http";
import process from "node:process";

const BODY = "instance-identity ok\n";

const tcpPorts = (process.argv[2] ?? "80,443").split(",").map(Number);
const udpPort = Number(process.argv[3] ?? "53");

/** @param {import("node:http").Server} server @param {number} port @returns {Promise<void>} */
function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    // "::" with ipv6Only false is dual stack: IPv4 clients arrive as ::ffff:a.b.c.d.
    server.listen({ host: "::", port, ipv6Only: false }, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** @param {string | undefined} address */
function unmapped(address) {
  return (address ?? "?").replace(/^::ffff:/, "");
}

const servers = tcpPorts.map((port) => {
  const server = createServer((req, res) => {
    // Tells a test which address actually served it, e.g. after a DNAT detour.
    res.setHeader("x-served-by", `${unmapped(req.socket.localAddress)}:${port}`);
    res.setHeader("content-type", "text/plain");
    res.end(BODY);
    req.resume();
  });
  // Held connections in the harness idle for as long as a test wants; never time them out.
  server.keepAliveTimeout = 0;
  server.headersTimeout = 0;
  server.requestTimeout = 0;
  return { server, port };
});

await Promise.all(servers.map(({ server, port }) => listen(server, port)));

// One UDP socket per address: a socket bound to "::" would answer from whichever source address
// routing picks, and a connected client socket drops replies from any other address. The list
// comes from the harness because os.networkInterfaces() skips a veth whose carrier is not up yet.
const udpAddresses = (process.argv[4] ?? "127.0.0.1,::1").split(",");
const udpSockets = await Promise.all(
  udpAddresses.map(
    (address) =>
      /** @type {Promise<import("node:dgram").Socket>} */ (
        new Promise((resolve, reject) => {
          const socket = createSocket(address.includes(":") ? "udp6" : "udp4");
          socket.on("message", (msg, rinfo) => {
            socket.send(msg, rinfo.port, rinfo.address);
          });
          socket.once("error", reject);
          socket.bind({ address, port: udpPort }, () => {
            socket.off("error", reject);
            resolve(socket);
          });
        })
      ),
  ),
);

function shutdown() {
  for (const { server } of servers) {
    server.closeAllConnections();
    server.close();
  }
  for (const socket of udpSockets) socket.close();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

process.stdout.write(
  JSON.stringify({
    ready: true,
    pid: process.pid,
    tcpPorts,
    udpPort,
    udpAddresses,
  }) + "\n",
);
