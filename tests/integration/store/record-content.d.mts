export function recordContent(id: string, version: number, payloadBytes: number): string;
