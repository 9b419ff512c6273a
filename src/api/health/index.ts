export * from "./health-service.js";
export * from "./health-status-board.js";
