// Firecracker's own command line (SPEC §6.1, §6.6): the API socket, the instance ID (the jailer passes that one
// itself) and, for the `strict` seccomp policy, a compiled BPF filter. Nothing else is configured here: the rest goes
// through the API, so that every setting is one of the requests validated against the specification.

export interface FirecrackerArgsInput {
  /** API socket path as Firecracker sees it (inside the chroot when jailed). */
  apiSocket: string;
  instanceId: string;
  /** Compiled BPF filter (strict policy) as Firecracker sees it; null keeps Firecracker's built-in filters. */
  seccompFilterPath: string | null;
  /** Under the jailer, which adds `--id` to Firecracker's arguments by itself. */
  jailed: boolean;
}

export function firecrackerArgs(input: FirecrackerArgsInput): string[] {
  const args = ["--api-sock", input.apiSocket];
  if (!input.jailed) args.push("--id", input.instanceId);
  if (input.seccompFilterPath !== null) args.push("--seccomp-filter", input.seccompFilterPath);
  return args;
}
