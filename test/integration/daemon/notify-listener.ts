// A stand-in for systemd's notify socket: a python3 AF_UNIX/SOCK_DGRAM listener that writes each
// datagram as a JSON line to a file. It closes every fd it receives, which is how systemd-notify
// learns that its BARRIER=1 was processed; without that each send would hang for seconds.

import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { until } from "../support.js";

const LISTENER = fileURLToPath(new URL("../../fixtures/notify-listener.py", import.meta.url));

/** One sd_notify message as the manager would parse it. */
export type NotifyMessage = ReadonlyMap<string, string>;

export interface NotifyListener {
  readonly socketPath: string;
  /** Every message so far in arrival order, systemd-notify's own BARRIER=1 datagrams left out. */
  messages(): Promise<NotifyMessage[]>;
  close(): Promise<void>;
}

function parseMessage(data: string): NotifyMessage {
  const fields = new Map<string, string>();
  for (const assignment of data.split("\n")) {
    const eq = assignment.indexOf("=");
    if (eq > 0) fields.set(assignment.slice(0, eq), assignment.slice(eq + 1));
  }
  return fields;
}

export async function startNotifyListener(prefix: string): Promise<NotifyListener> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-notify-`));
  await chmod(dir, 0o700);
  const socketPath = join(dir, "notify.sock");
  const logPath = join(dir, "datagrams.jsonl");
  const child: ChildProcess = spawn("/usr/bin/python3", [LISTENER, socketPath, logPath], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      resolve();
    });
  });

  const lines = async (): Promise<Record<string, unknown>[]> => {
    const text = await readFile(logPath, "utf8").catch(() => "");
    return text
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  };

  const close = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };

  try {
    await until(
      "the notify listener to bind",
      async () => ((await lines()).some((line) => line.listening === true) ? true : undefined),
      5000,
    );
  } catch (error) {
    await close();
    throw new Error(`${String(error)}: ${stderr}`, { cause: error });
  }

  return {
    socketPath,
    async messages() {
      return (await lines())
        .filter((line) => typeof line.data === "string")
        .map((line) => parseMessage(String(line.data)))
        .filter((fields) => !fields.has("BARRIER"));
    },
    close,
  };
}
