// Ports to the host itself, beyond the data plane: how much memory it has left. Adapter: src/runtime/host.

export interface HostMemoryReading {
  totalBytes: number;
  /** What the kernel estimates can be handed out without swapping (MemAvailable). */
  availableBytes: number;
  /**
   * Share of the last 10 s in which some task stalled waiting for memory (PSI `some avg10`), percent 0-100; null
   * where the kernel has no pressure stall information (built without it, or disabled).
   */
  stallPct10s: number | null;
}

export interface HostMemory {
  read(): Promise<HostMemoryReading>;
}
