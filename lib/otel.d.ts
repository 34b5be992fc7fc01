// `medusa-idempotency-native/otel`: OpenTelemetry spans and metrics from the package's
// TracingChannel events. Needs `@opentelemetry/api` 1.x (an optional peer dependency).
import type { ContextManager, MeterProvider, TracerProvider } from '@opentelemetry/api'

export interface InstrumentOptions {
  /** Where spans go (default: the global tracer provider). */
  tracerProvider?: TracerProvider
  /** Where metrics go (default: the global meter provider). */
  meterProvider?: MeterProvider
  /** Record each statement's text in `db.query.text` (default false; parameters are never recorded). */
  captureQueryText?: boolean
  /**
   * The context manager whose AsyncLocalStorage makes a stage's span the active context while
   * its callback runs (default: the global one; `AsyncLocalStorageContextManager` works).
   */
  contextManager?: ContextManager
}

export interface Instrumentation {
  /** Unsubscribe: no span or metric is made and nothing is published any more. */
  disable(): void
}

/**
 * Turn the service's events into spans (INTERNAL `idempotency <operation>` per call, CLIENT
 * `<db.query.summary>` per statement a stage's callback sends) and metrics
 * (`db.client.operation.duration` in seconds; counters `medusa.idempotency.conflicts`,
 * `medusa.idempotency.replays`, `medusa.idempotency.retries`, `medusa.idempotency.completer.outcomes`).
 */
export declare function instrument(options?: InstrumentOptions): Instrumentation

/** `db.operation.name`, `db.collection.name` and `db.query.summary` of a statement's text. */
export declare function summarize(sql: string): { operation?: string, collection?: string, summary?: string }
