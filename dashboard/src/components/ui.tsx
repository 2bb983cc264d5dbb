// The app's small set of controls. Plain Tailwind classes; no library that injects <style>
// (the Content-Security-Policy forbids inline styles elements).
import clsx from "clsx";
import { AlertCircle, Check, Copy, Inbox, LoaderCircle, X } from "lucide-react";
import {
  useCallback,
  useEffect,
  useId,
  useRef,
  useState,
  type ButtonHTMLAttributes,
  type HTMLAttributes,
  type InputHTMLAttributes,
  type ReactNode,
  type Ref,
} from "react";
import { createPortal } from "react-dom";
import { ApiError, type SessionStatus } from "../api";
import { useT } from "../i18n";

// ---- Button ----

type Variant = "primary" | "secondary" | "danger" | "danger-outline" | "ghost";

export interface ButtonProps extends ButtonHTMLAttributes<HTMLButtonElement> {
  variant?: Variant;
  size?: "sm" | "md";
  loading?: boolean;
  icon?: ReactNode;
}

const VARIANTS: Record<Variant, string> = {
  primary: "bg-emerald-600 text-white hover:bg-emerald-700 border-transparent",
  secondary: "bg-white text-slate-800 hover:bg-slate-50 border-slate-300",
  danger: "bg-red-600 text-white hover:bg-red-700 border-transparent",
  "danger-outline": "bg-white text-red-700 hover:bg-red-50 border-slate-300",
  ghost: "bg-transparent text-slate-700 hover:bg-slate-100 border-transparent",
};

export const focusRing =
  "focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-emerald-600";

export function Button({
  variant = "secondary",
  size = "md",
  loading = false,
  icon,
  className,
  children,
  disabled,
  type = "button",
  ...rest
}: ButtonProps) {
  return (
    <button
      type={type}
      disabled={disabled || loading}
      aria-busy={loading || undefined}
      className={clsx(
        "inline-flex items-center justify-center gap-1.5 rounded-md border font-medium shadow-xs transition-colors",
        "disabled:cursor-not-allowed disabled:opacity-60",
        focusRing,
        size === "sm" ? "px-2.5 py-1.5 text-sm" : "px-4 py-2 text-sm",
        VARIANTS[variant],
        className,
      )}
      {...rest}
    >
      {loading ? <LoaderCircle aria-hidden="true" className="size-4 animate-spin" /> : icon}
      {children}
    </button>
  );
}

// ---- Spinner ----

export function Spinner({ label, className }: { label?: string; className?: string }) {
  const t = useT();
  return (
    <span role="status" className={clsx("inline-flex items-center gap-2 text-slate-600", className)}>
      <LoaderCircle aria-hidden="true" className="size-5 animate-spin" />
      <span className={label ? "text-sm" : "sr-only"}>{label ?? t("common.loading")}</span>
    </span>
  );
}

// ---- Card ----

export function Card({
  title,
  actions,
  children,
  className,
  ...rest
}: {
  title?: ReactNode;
  actions?: ReactNode;
  children?: ReactNode;
  className?: string;
} & Omit<HTMLAttributes<HTMLElement>, "title">) {
  const headingId = useId();
  return (
    <section
      aria-labelledby={title ? headingId : undefined}
      className={clsx("rounded-lg border border-slate-200 bg-white p-4 shadow-xs", className)}
      {...rest}
    >
      {(title || actions) && (
        <div className="mb-3 flex flex-wrap items-center justify-between gap-2">
          {title && (
            <h2 id={headingId} className="text-base font-semibold text-slate-900">
              {title}
            </h2>
          )}
          {actions && <div className="flex flex-wrap gap-2">{actions}</div>}
        </div>
      )}
      {children}
    </section>
  );
}

// ---- EmptyState ----

export function EmptyState({
  title,
  children,
  action,
  icon,
  testId = "empty-state",
}: {
  title: ReactNode;
  children?: ReactNode;
  action?: ReactNode;
  icon?: ReactNode;
  testId?: string;
}) {
  return (
    <div
      data-testid={testId}
      className="flex flex-col items-center gap-2 rounded-lg border border-dashed border-slate-300 bg-white px-4 py-10 text-center"
    >
      <span aria-hidden="true" className="text-slate-400">
        {icon ?? <Inbox className="size-8" />}
      </span>
      <p className="font-medium text-slate-800">{title}</p>
      {children && <div className="max-w-md text-sm text-slate-600">{children}</div>}
      {action && <div className="mt-2">{action}</div>}
    </div>
  );
}

// ---- ErrorNote ----

/** The text to show for an error: the API's own message, or ours for network and throttling. */
export function errorText(error: unknown, t: (key: string, vars?: Record<string, string | number>) => string): string {
  if (error instanceof ApiError) {
    if (error.code === "NETWORK") return t("error.network");
    if (error.status === 429 && error.retryAfter !== undefined)
      return t("error.rateLimited", { s: error.retryAfter });
    return error.message || t("error.generic");
  }
  if (typeof error === "string") return error;
  if (error instanceof Error) return error.message;
  return t("error.generic");
}

export function ErrorNote({
  error,
  className,
  onRetry,
}: {
  error: unknown;
  className?: string;
  onRetry?: () => void;
}) {
  const t = useT();
  if (error === null || error === undefined || error === false) return null;
  return (
    <div
      role="alert"
      className={clsx(
        "flex items-start gap-2 rounded-md border border-red-200 bg-red-50 px-3 py-2 text-sm text-red-800",
        className,
      )}
    >
      <AlertCircle aria-hidden="true" className="mt-0.5 size-4 shrink-0" />
      <div className="min-w-0 flex-1 break-words">{errorText(error, t)}</div>
      {onRetry && (
        <button
          type="button"
          onClick={onRetry}
          className={clsx("shrink-0 font-medium underline underline-offset-2", focusRing)}
        >
          {t("common.retry")}
        </button>
      )}
    </div>
  );
}

// ---- StatusBadge ----

const BADGE: Record<SessionStatus, string> = {
  connected: "bg-emerald-50 text-emerald-800 ring-emerald-600/30",
  qr: "bg-amber-50 text-amber-800 ring-amber-600/30",
  disconnected: "bg-slate-100 text-slate-700 ring-slate-500/30",
};
const DOT: Record<SessionStatus, string> = {
  connected: "bg-emerald-500",
  qr: "bg-amber-500",
  disconnected: "bg-slate-400",
};

export function StatusBadge({ status, detail }: { status: SessionStatus; detail?: string }) {
  const t = useT();
  const known = status in BADGE ? status : "disconnected";
  const showDetail = detail && detail !== status && !(status === "qr" && detail === "awaiting_qr");
  return (
    <span
      data-testid="status-badge"
      data-status={status}
      className={clsx(
        "inline-flex items-center gap-1.5 rounded-full px-2 py-0.5 text-xs font-medium ring-1 ring-inset whitespace-nowrap",
        BADGE[known],
      )}
    >
      <span aria-hidden="true" className={clsx("size-1.5 rounded-full", DOT[known])} />
      {t(`status.${known}`)}
      {showDetail && (
        <span className="font-normal opacity-80">
          · {t(`statusDetail.${detail}`) === `statusDetail.${detail}` ? detail : t(`statusDetail.${detail}`)}
        </span>
      )}
    </span>
  );
}

// ---- Field ----

export interface FieldControlProps {
  id: string;
  "aria-describedby"?: string;
  "aria-invalid"?: boolean;
}

type FieldProps = {
  label: ReactNode;
  hint?: ReactNode;
  error?: ReactNode;
  className?: string;
  /** Another control (select, textarea): called with the id and aria wiring to put on it. */
  children?: (control: FieldControlProps) => ReactNode;
  ref?: Ref<HTMLInputElement>;
} & Omit<InputHTMLAttributes<HTMLInputElement>, "children">;

export const inputClass = clsx(
  "block w-full rounded-md border border-slate-300 bg-white px-3 py-2 text-sm text-slate-900 shadow-xs",
  "placeholder:text-slate-400 disabled:bg-slate-100",
  "focus:border-emerald-600 focus:outline-2 focus:outline-offset-0 focus:outline-emerald-600/40",
  "aria-[invalid=true]:border-red-500",
);

/** A label wired to its control, with an optional hint and error under it. */
export function Field({ label, hint, error, className, children, id: givenId, ref, ...input }: FieldProps) {
  const autoId = useId();
  const id = givenId ?? autoId;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const describedBy = [hint ? hintId : null, error ? errorId : null].filter(Boolean).join(" ") || undefined;
  const control: FieldControlProps = { id, "aria-describedby": describedBy, "aria-invalid": error ? true : undefined };
  return (
    <div className={clsx("flex flex-col gap-1", className)}>
      <label htmlFor={id} className="text-sm font-medium text-slate-800">
        {label}
      </label>
      {children ? children(control) : <input ref={ref} className={inputClass} {...input} {...control} />}
      {hint && (
        <p id={hintId} className="text-xs text-slate-500">
          {hint}
        </p>
      )}
      {error && (
        <p id={errorId} className="text-xs text-red-700">
          {error}
        </p>
      )}
    </div>
  );
}

// ---- Modal ----

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

// Open dialogs, innermost last: only the innermost answers Escape and traps Tab.
const modalStack: symbol[] = [];

export function Modal({
  title,
  onClose,
  children,
  footer,
  size = "md",
  closeLabel,
  initialFocus,
  dismissable = true,
}: {
  title: ReactNode;
  onClose: () => void;
  children: ReactNode;
  footer?: ReactNode;
  size?: "sm" | "md" | "lg";
  closeLabel?: string;
  /** A selector inside the dialog to focus first (default: the first focusable control). */
  initialFocus?: string;
  /** false: Escape and the backdrop do nothing (e.g. while saving). */
  dismissable?: boolean;
}) {
  const t = useT();
  const titleId = useId();
  const panel = useRef<HTMLDivElement>(null);
  const onCloseRef = useRef(onClose);
  const dismissableRef = useRef(dismissable);
  onCloseRef.current = onClose;
  dismissableRef.current = dismissable;

  useEffect(() => {
    const me = Symbol("modal");
    modalStack.push(me);
    const previous = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    document.body.classList.add("overflow-hidden");
    const root = panel.current;
    if (root) {
      const first =
        (initialFocus ? root.querySelector<HTMLElement>(initialFocus) : null) ??
        root.querySelector<HTMLElement>(`[data-autofocus], ${FOCUSABLE}`);
      (first ?? root).focus();
    }
    const onKey = (e: KeyboardEvent) => {
      if (modalStack[modalStack.length - 1] !== me || !panel.current) return;
      if (e.key === "Escape") {
        e.preventDefault();
        if (dismissableRef.current) onCloseRef.current();
        return;
      }
      if (e.key !== "Tab") return;
      const items = Array.from(panel.current.querySelectorAll<HTMLElement>(FOCUSABLE)).filter(
        (el) => el.offsetParent !== null || el === document.activeElement,
      );
      if (items.length === 0) {
        e.preventDefault();
        panel.current.focus();
        return;
      }
      const first = items[0];
      const last = items[items.length - 1];
      const active = document.activeElement;
      if (e.shiftKey && (active === first || !panel.current.contains(active))) {
        e.preventDefault();
        last.focus();
      } else if (!e.shiftKey && (active === last || !panel.current.contains(active))) {
        e.preventDefault();
        first.focus();
      }
    };
    document.addEventListener("keydown", onKey);
    return () => {
      document.removeEventListener("keydown", onKey);
      const at = modalStack.indexOf(me);
      if (at >= 0) modalStack.splice(at, 1);
      if (modalStack.length === 0) document.body.classList.remove("overflow-hidden");
      if (previous && previous.isConnected) previous.focus();
    };
    // Runs once per opening: focus is placed and restored around the dialog's life.
  }, []);

  return createPortal(
    <div className="fixed inset-0 z-50 flex items-end justify-center p-0 sm:items-center sm:p-4">
      <div
        aria-hidden="true"
        className="absolute inset-0 bg-slate-900/50"
        onMouseDown={() => {
          if (dismissableRef.current) onCloseRef.current();
        }}
      />
      <div
        ref={panel}
        role="dialog"
        aria-modal="true"
        aria-labelledby={titleId}
        tabIndex={-1}
        className={clsx(
          "relative flex max-h-[92vh] w-full flex-col rounded-t-xl bg-white shadow-xl outline-none sm:rounded-xl",
          size === "sm" && "sm:max-w-sm",
          size === "md" && "sm:max-w-lg",
          size === "lg" && "sm:max-w-2xl",
        )}
      >
        <div className="flex items-start justify-between gap-3 border-b border-slate-200 px-4 py-3">
          <h2 id={titleId} className="text-lg font-semibold text-slate-900">
            {title}
          </h2>
          {dismissable && (
            <button
              type="button"
              onClick={() => onCloseRef.current()}
              className={clsx("-m-1 rounded-md p-1 text-slate-500 hover:bg-slate-100 hover:text-slate-800", focusRing)}
              aria-label={closeLabel ?? t("common.close")}
            >
              <X aria-hidden="true" className="size-5" />
            </button>
          )}
        </div>
        <div className="overflow-y-auto px-4 py-4">{children}</div>
        {footer && (
          <div className="flex flex-wrap justify-end gap-2 border-t border-slate-200 px-4 py-3">{footer}</div>
        )}
      </div>
    </div>,
    document.body,
  );
}

// ---- ConfirmDialog ----

export function ConfirmDialog({
  title,
  message,
  confirmLabel,
  cancelLabel,
  danger = true,
  onConfirm,
  onClose,
}: {
  title: ReactNode;
  message: ReactNode;
  confirmLabel: string;
  cancelLabel?: string;
  danger?: boolean;
  /** May be async: the dialog shows it working, closes when it succeeds, shows the error if not. */
  onConfirm: () => Promise<void> | void;
  onClose: () => void;
}) {
  const t = useT();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
      onClose();
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  };
  return (
    <Modal
      title={title}
      onClose={onClose}
      size="sm"
      dismissable={!busy}
      initialFocus="[data-cancel]"
      footer={
        <>
          <Button data-cancel onClick={onClose} disabled={busy}>
            {cancelLabel ?? t("common.cancel")}
          </Button>
          <Button variant={danger ? "danger" : "primary"} onClick={confirm} loading={busy}>
            {confirmLabel}
          </Button>
        </>
      }
    >
      <div className="space-y-3 text-sm text-slate-700">
        <div>{message}</div>
        <ErrorNote error={error} />
      </div>
    </Modal>
  );
}

// ---- CopyButton ----

async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall back below */
  }
  // Plain http (a VPS reached by its address) has no clipboard API: select and copy.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "fixed -left-[9999px] top-0 opacity-0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A "Copy" button; its accessible name stays "Copy", a polite status says "Copied!". */
export function CopyButton({
  text,
  label,
  size = "md",
  variant = "secondary",
}: {
  text: string;
  label?: string;
  size?: "sm" | "md";
  variant?: Variant;
}) {
  const t = useT();
  const [state, setState] = useState<"idle" | "copied" | "failed">("idle");
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => () => clearTimeout(timer.current), []);
  const onClick = useCallback(async () => {
    const ok = await copyText(text);
    setState(ok ? "copied" : "failed");
    clearTimeout(timer.current);
    timer.current = setTimeout(() => setState("idle"), 2500);
  }, [text]);
  return (
    <span className="inline-flex items-center gap-2">
      <Button
        size={size}
        variant={variant}
        onClick={onClick}
        icon={state === "copied" ? <Check aria-hidden="true" className="size-4" /> : <Copy aria-hidden="true" className="size-4" />}
      >
        {label ?? t("common.copy")}
      </Button>
      <span aria-live="polite" className="text-xs text-slate-600">
        {state === "copied" ? t("common.copied") : state === "failed" ? t("common.copyFailed") : ""}
      </span>
    </span>
  );
}

// ---- Page title ----

/** Sets document.title to "<title> · gatewayd". */
export function usePageTitle(title: string): void {
  useEffect(() => {
    document.title = title ? `${title} · gatewayd` : "gatewayd";
  }, [title]);
}
