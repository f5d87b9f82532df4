#!/usr/bin/env node
// Entry point: parses the command line and wires the real adapters into the commands.
// Nothing else lives here: each command's logic is in its own file and takes a Runtime.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { DEFAULT_CONFIG_PATH } from "../core/config-model.js";
import { createCommandRunner } from "../adapters/command-runner.js";
import { loadConfigFile } from "../adapters/config-file.js";
import { ipv6Enabled, legacyTablesLoaded } from "../adapters/host-facts.js";
import { createIdentityLookup } from "../adapters/identity.js";
import { applyCommand } from "./apply.js";
import { checkCommand } from "./check.js";
import { planCommand } from "./plan.js";
import { reloadCommand } from "./reload.js";
import { runCommand } from "./run.js";
import type { Runtime } from "./runtime.js";
import { CommandExit, EXIT } from "./runtime.js";
import { statusCommand } from "./status.js";
import { uninstallCommand } from "./uninstall.js";

function packageVersion(): string {
  // Works from src/cli (tsx) and from dist/src/cli (compiled): walk up to our package.json.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === "imds-guard" && pkg.version !== undefined) return pkg.version;
    } catch {
      // not here; keep walking up
    }
    dir = dirname(dir);
  }
  return "unknown";
}

function realRuntime(): Runtime {
  const run = createCommandRunner();
  return {
    run,
    lookup: createIdentityLookup(run),
    loadConfig: (path) => loadConfigFile(path),
    legacyTablesLoaded,
    ipv6Enabled,
    out: (text) => process.stdout.write(`${text}\n`),
    err: (text) => process.stderr.write(`${text}\n`),
  };
}

async function main(argv: string[]): Promise<number> {
  const runtime = realRuntime();
  let exitCode: number = EXIT.ok;
  const configOption = () =>
    new Option("-c, --config <path>", "config file").default(DEFAULT_CONFIG_PATH);
  const program = new Command("imds-guard")
    .description("Keeps the wrong processes on this VM away from the instance metadata service.")
    .version(packageVersion())
    .addOption(
      new Option("--log-level <level>", "log level for run")
        .choices(["trace", "debug", "info", "warn", "error", "fatal"])
        .default("info"),
    )
    .exitOverride()
    .configureOutput({
      writeOut: (text) => process.stdout.write(text),
      writeErr: (text) => process.stderr.write(text),
    });

  program
    .command("check")
    .description("validate the config and show the principals it resolves to; changes nothing")
    .addOption(configOption())
    .action(async (options: { config: string }) => {
      exitCode = await checkCommand(runtime, options.config);
    });
  program
    .command("plan")
    .description(
      "show what apply would change, with the exact restore script; changes nothing (exit 3: changes pending)",
    )
    .addOption(configOption())
    .action(async (options: { config: string }) => {
      exitCode = await planCommand(runtime, options.config);
    });
  program
    .command("apply")
    .description("reconcile the kernel with the config once, atomically per family")
    .addOption(configOption())
    .action(async (options: { config: string }) => {
      exitCode = await applyCommand(runtime, options.config);
    });
  program
    .command("status")
    .description(
      "show what is installed now and whether it matches the config (exit 0 in sync, 3 drifted, 1 not installed)",
    )
    .addOption(configOption())
    .option("--json", "print JSON")
    .action(async (options: { config: string; json?: boolean }) => {
      exitCode = await statusCommand(runtime, options.config, options.json === true);
    });
  program
    .command("uninstall")
    .description(
      "remove imds-guard's jumps and chains (both families, both flavours); nothing else",
    )
    .action(async () => {
      exitCode = await uninstallCommand(runtime);
    });
  program
    .command("reload")
    .description(
      "ExecReload: SIGHUP the daemon and wait until it has reloaded (exit 1 if it does not)",
    )
    .addOption(configOption())
    .requiredOption("--pid <pid>", "the daemon's pid (systemd: $MAINPID)", (value) => {
      if (!/^\d+$/.test(value)) throw new InvalidArgumentError("a pid is a positive number");
      return Number(value);
    })
    .action(async (options: { config: string; pid: number }) => {
      exitCode = await reloadCommand(runtime, { configPath: options.config, pid: options.pid });
    });
  program
    .command("run")
    .description(
      "run the guard daemon: keep the kernel in line with the config, serve health and metrics",
    )
    .addOption(configOption())
    .action(async (options: { config: string }) => {
      const globals = program.opts<{ logLevel: string }>();
      exitCode = await runCommand(runtime, {
        configPath: options.config,
        logLevel: globals.logLevel,
      });
      // Leftover handles (a watcher closing slowly) must not keep a stopped daemon alive.
      process.exit(exitCode);
    });

  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (error instanceof CommandExit) return error.exitCode;
    throw error;
  }
  return exitCode;
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(
      `imds-guard: unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = EXIT.failure;
  },
);
