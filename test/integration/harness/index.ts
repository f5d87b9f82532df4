// The integration-test harness: throwaway namespaces, a fake metadata service, real users, and
// probes that report what a given uid actually experiences. See testbed.ts for the guarantees.

export {
  HTTP_PORTS,
  INSTANCE_ADDRESSES,
  METADATA_ADDRESSES,
  OTHER_ADDRESSES,
  createTestbed,
  withTestbed,
  type SpawnInInstanceOptions,
  type Testbed,
  type TestbedOptions,
} from "./testbed.js";
export {
  UDP_ECHO_PORT,
  type Addresses,
  type ConnectOptions,
  type ConnectOutcome,
  type Family,
  type HeldConnection,
  type HoldOptions,
  type ProbeResult,
  type Prober,
  type ProberCounts,
  type ProberOptions,
  type Protocol,
} from "./probes.js";
export type { CreateUserOptions, ProbeUser, TestGroup, TestUser } from "./principals.js";
export {
  isAlive,
  type CommandResult,
  type SpawnOptions,
  type SpawnedProcess,
} from "./processes.js";
export type { ExecOptions } from "./netns.js";
