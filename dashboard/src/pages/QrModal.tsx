// The QR dialog: POST …/start (docs/contract/api-v1.md §7.5), then the QR and the status live
// over /ws/sessions/{id} (§11); a countdown from expires_in, "Refresh QR" once it runs out,
// "Connected!" and closing 2 s after the session connects.
import { CircleCheck, RefreshCw, Smartphone } from "lucide-react";
import { useCallback, useEffect, useRef, useState } from "react";
import { api, ApiError, type StartResult } from "../api";
import { Button, ErrorNote, Modal, Spinner } from "../components/ui";
import { useT } from "../i18n";
import { subscribe } from "../ws";

type Phase = "starting" | "waiting" | "connecting" | "connected" | "expired" | "failed";

const CLOSE_AFTER_MS = 2000;
const DEFAULT_EXPIRY = 60;
const POLL_MS = 5000;

export default function QrModal({
  sessionId,
  sessionName,
  onClose,
  onConnected,
  startWith,
}: {
  sessionId: string;
  sessionName?: string;
  onClose: () => void;
  onConnected?: () => void;
  /** An answer already in hand (e.g. a reconnect that needs a QR): shown without a new start. */
  startWith?: StartResult;
}) {
  const t = useT();
  const [phase, setPhase] = useState<Phase>("starting");
  const [qr, setQr] = useState<string | null>(null);
  const [deadline, setDeadline] = useState<number | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const [error, setError] = useState<unknown>(null);
  const [socketOpen, setSocketOpen] = useState(false);
  const phaseRef = useRef<Phase>("starting");
  phaseRef.current = phase;
  const onCloseRef = useRef(onClose);
  onCloseRef.current = onClose;
  const onConnectedRef = useRef(onConnected);
  onConnectedRef.current = onConnected;

  const showQr = useCallback((code: string | null | undefined, expiresIn: number | null | undefined) => {
    if (!code) return;
    setQr(code);
    const secs = typeof expiresIn === "number" && expiresIn > 0 ? expiresIn : DEFAULT_EXPIRY;
    setNow(Date.now());
    setDeadline(Date.now() + secs * 1000);
    setPhase("waiting");
  }, []);

  const connected = useCallback(() => {
    if (phaseRef.current === "connected") return;
    phaseRef.current = "connected";
    setPhase("connected");
    setQr(null);
    setDeadline(null);
    onConnectedRef.current?.();
  }, []);

  const apply = useCallback(
    (result: StartResult) => {
      if (result.status === "connected") connected();
      else if (result.status === "qr" && result.qr_code) showQr(result.qr_code, result.expires_in);
      else if (result.status === "qr") setPhase("waiting");
      // disconnected while a linked device connects: wait for the status over the socket.
      else setPhase("connecting");
    },
    [connected, showQr],
  );

  const start = useCallback(async () => {
    setError(null);
    setPhase("starting");
    setQr(null);
    setDeadline(null);
    try {
      const result = await api<StartResult>("POST", `/api/v1/sessions/${encodeURIComponent(sessionId)}/start`);
      if (phaseRef.current !== "connected") apply(result);
    } catch (e) {
      if (phaseRef.current === "connected") return;
      setError(e);
      setPhase(e instanceof ApiError && e.code === "QR_GENERATION_FAILED" ? "expired" : "failed");
    }
  }, [apply, sessionId]);

  // Start once when opened (or take the answer we were given).
  const started = useRef(false);
  useEffect(() => {
    if (started.current) return;
    started.current = true;
    if (startWith) apply(startWith);
    else void start();
  }, [apply, start, startWith]);

  // The live QR and status.
  useEffect(
    () =>
      subscribe(
        sessionId,
        (event) => {
          if (phaseRef.current === "connected") return;
          if (event.type === "qr_update") {
            if (event.data.qr_code) showQr(event.data.qr_code, event.data.expires_in);
          } else if (event.type === "status_update") {
            const status = event.data.status;
            if (status === "connected") connected();
            else if (status === "disconnected" && phaseRef.current === "waiting") {
              // The pairing window closed without a scan (the QRs ran out).
              setPhase("expired");
              setDeadline(null);
            }
          }
        },
        setSocketOpen,
      ),
    [sessionId, showQr, connected],
  );

  // Without the socket, ask for the QR now and then.
  useEffect(() => {
    if (socketOpen || phase === "connected" || phase === "starting" || phase === "failed") return;
    const timer = setInterval(async () => {
      try {
        const r = await api<StartResult>("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}/qr`);
        if (phaseRef.current === "connected") return;
        if (r.status === "connected") connected();
        else if (r.qr_code) showQr(r.qr_code, r.expires_in);
      } catch {
        /* the next tick tries again */
      }
    }, POLL_MS);
    return () => clearInterval(timer);
  }, [socketOpen, phase, sessionId, connected, showQr]);

  // The countdown.
  useEffect(() => {
    if (deadline === null || phase !== "waiting") return;
    const timer = setInterval(() => {
      const n = Date.now();
      setNow(n);
      if (n >= deadline) setPhase("expired");
    }, 250);
    return () => clearInterval(timer);
  }, [deadline, phase]);

  // Close 2 s after connecting.
  useEffect(() => {
    if (phase !== "connected") return;
    const timer = setTimeout(() => onCloseRef.current(), CLOSE_AFTER_MS);
    return () => clearTimeout(timer);
  }, [phase]);

  const secondsLeft = deadline === null ? 0 : Math.max(0, Math.ceil((deadline - now) / 1000));
  const expired = phase === "expired";

  let statusText: string;
  switch (phase) {
    case "starting":
      statusText = t("qr.starting");
      break;
    case "waiting":
      statusText = t("qr.waiting");
      break;
    case "connecting":
      statusText = t("qr.connecting");
      break;
    case "connected":
      statusText = t("qr.connected");
      break;
    case "expired":
      statusText = t("qr.expired");
      break;
    default:
      statusText = t("qr.failed");
  }

  return (
    <Modal
      title={t("qr.title")}
      onClose={onClose}
      size="sm"
      footer={
        <>
          {(expired || phase === "failed") && (
            <Button variant="primary" onClick={() => void start()} icon={<RefreshCw aria-hidden="true" className="size-4" />}>
              {t("qr.refresh")}
            </Button>
          )}
          <Button onClick={onClose}>{phase === "connected" ? t("common.close") : t("common.cancel")}</Button>
        </>
      }
    >
      <div className="flex flex-col items-center gap-4 text-center">
        {sessionName && <p className="text-sm font-medium text-slate-700">{sessionName}</p>}
        <div className="relative grid size-64 max-w-full place-items-center rounded-lg border border-slate-200 bg-white">
          {phase === "connected" ? (
            <CircleCheck aria-hidden="true" className="size-24 text-emerald-600" />
          ) : qr ? (
            <img
              data-testid="qr-image"
              src={qr}
              alt={t("qr.alt")}
              width={256}
              height={256}
              className={expired ? "size-full rounded-lg opacity-20" : "size-full rounded-lg [image-rendering:pixelated]"}
            />
          ) : phase === "starting" || phase === "connecting" ? (
            <Spinner />
          ) : (
            <Smartphone aria-hidden="true" className="size-16 text-slate-300" />
          )}
        </div>
        <p
          data-testid="qr-status"
          role="status"
          className={
            phase === "connected"
              ? "text-lg font-semibold text-emerald-700"
              : expired || phase === "failed"
                ? "text-sm font-medium text-red-700"
                : "text-sm font-medium text-slate-800"
          }
        >
          {statusText}
        </p>
        {phase === "waiting" && deadline !== null && (
          <p className="text-sm text-slate-600">
            {t("qr.expiresIn")}{" "}
            <span data-testid="qr-countdown" className="font-mono font-semibold tabular-nums text-slate-900">
              {secondsLeft}
            </span>{" "}
            {t("qr.seconds")}
          </p>
        )}
        {expired && (
          <p className="text-sm text-slate-600">
            <span data-testid="qr-countdown" className="sr-only">
              0
            </span>
            {t("qr.expiredHint")}
          </p>
        )}
        {phase !== "connected" && (
          <ol className="list-decimal space-y-1 pl-5 text-left text-sm text-slate-600">
            <li>{t("qr.step1")}</li>
            <li>{t("qr.step2")}</li>
            <li>{t("qr.step3")}</li>
          </ol>
        )}
        <ErrorNote error={phase === "failed" || expired ? error : null} className="w-full text-left" />
      </div>
    </Modal>
  );
}
