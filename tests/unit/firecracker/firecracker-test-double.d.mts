// Types of the Firecracker API TEST DOUBLE (firecracker-test-double.mjs), for tests only.

export interface RecordedRequest {
  method: string;
  path: string;
  body: unknown;
}

export interface FirecrackerTestDouble {
  requests: RecordedRequest[];
  vm: { state: string; configured: Set<string> };
  close(): Promise<void>;
}

export function startFirecrackerTestDouble(options: {
  socketPath: string;
  instanceId?: string;
  serial?: (text: string) => void;
  check?: (req: RecordedRequest) => string[];
  busyCount?: number;
  requestLog?: string | null;
  onGuestExit?: () => void;
}): Promise<FirecrackerTestDouble>;
