// The exact bytes of version `version` of test record `id`, shared by the crash test and the writer it kills. The
// payload repeats a tag naming both, so any mix of two versions (a torn write) differs from every valid version.

/** @param {string} id @param {number} version @param {number} payloadBytes @returns {string} */
export function recordContent(id, version, payloadBytes) {
  const tag = `${id}:v${version};`;
  const payload = tag.repeat(Math.ceil(payloadBytes / tag.length)).slice(0, payloadBytes);
  return `${JSON.stringify({ schemaVersion: 1, id, version, payload })}\n`;
}
