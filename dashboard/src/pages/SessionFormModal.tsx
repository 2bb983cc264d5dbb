// Create a session (docs/contract/api-v1.md §7.1) or edit one (§7.4): name, webhook URL, the
// webhook's events, a new signing secret. A secret that comes back is shown once, with Copy.
import { TriangleAlert } from "lucide-react";
import { useEffect, useId, useState, type FormEvent } from "react";
import { api, ApiError, WEBHOOK_EVENTS, type Session, type WebhookEvent } from "../api";
import { Button, CopyButton, ErrorNote, Field, Modal, Spinner } from "../components/ui";
import { useT } from "../i18n";

type Props = {
  onClose: () => void;
  /** The session as saved (for the list), called before the secret, if any, is shown. */
  onSaved: (session: Session) => void;
} & ({ mode: "create"; session?: undefined } | { mode: "edit"; session: Session });

function fieldOf(error: unknown): string | null {
  if (error instanceof ApiError && error.details && typeof error.details.field === "string") return error.details.field;
  return null;
}

export default function SessionFormModal({ mode, session, onClose, onSaved }: Props) {
  const t = useT();
  const formId = useId();
  const [name, setName] = useState(session?.session_name ?? "");
  const [url, setUrl] = useState(session?.webhook_url ?? "");
  const [events, setEvents] = useState<WebhookEvent[]>(session?.webhook_events ?? ["message.received"]);
  const [rotate, setRotate] = useState(false);
  const [loading, setLoading] = useState(mode === "edit" && session?.webhook_events === undefined);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [nameMissing, setNameMissing] = useState(false);
  const [secret, setSecret] = useState<string | null>(null);
  const [savedName, setSavedName] = useState("");

  // The list has no webhook events: read the session itself.
  const sessionId = session?.session_id;
  useEffect(() => {
    if (mode !== "edit" || !sessionId) return;
    let live = true;
    api<Session>("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}`)
      .then((s) => {
        if (!live) return;
        setName(s.session_name);
        setUrl(s.webhook_url ?? "");
        setEvents(s.webhook_events ?? ["message.received"]);
        setLoading(false);
      })
      .catch((e) => {
        if (!live) return;
        setLoadError(e);
        setLoading(false);
      });
    return () => {
      live = false;
    };
  }, [mode, sessionId]);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const cleanName = name.trim();
    const cleanUrl = url.trim();
    if (!cleanName) {
      setNameMissing(true);
      return;
    }
    setNameMissing(false);
    setBusy(true);
    setError(null);
    try {
      let saved: Session;
      if (mode === "create") {
        const body: Record<string, unknown> = { session_name: cleanName };
        if (cleanUrl) body.webhook_url = cleanUrl;
        saved = await api<Session>("POST", "/api/v1/sessions", body);
      } else {
        const body: Record<string, unknown> = {
          session_name: cleanName,
          webhook_url: cleanUrl || null,
        };
        if (cleanUrl) body.webhook_events = events;
        if (cleanUrl && rotate) body.rotate_webhook_secret = true;
        saved = await api<Session>("PUT", `/api/v1/sessions/${encodeURIComponent(session.session_id)}`, body);
      }
      onSaved(saved);
      if (saved.webhook_secret) {
        setSavedName(saved.session_name);
        setSecret(saved.webhook_secret);
        setBusy(false);
      } else {
        onClose();
      }
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  if (secret !== null) {
    return (
      <Modal
        title={t("form.secretTitle")}
        onClose={onClose}
        footer={
          <Button variant="primary" onClick={onClose}>
            {t("common.done")}
          </Button>
        }
      >
        <div className="space-y-4 text-sm text-slate-700">
          <p>{t("form.secretIntro", { name: savedName })}</p>
          <div className="flex flex-col gap-2 sm:flex-row sm:items-center">
            <code
              data-testid="webhook-secret"
              className="min-w-0 flex-1 select-all break-all rounded-md border border-slate-200 bg-slate-50 px-3 py-2 font-mono text-sm text-slate-900"
            >
              {secret}
            </code>
            <CopyButton text={secret} />
          </div>
          <div role="note" className="flex gap-2 rounded-md border border-amber-300 bg-amber-50 px-3 py-2 text-amber-900">
            <TriangleAlert aria-hidden="true" className="mt-0.5 size-4 shrink-0" />
            <p>{t("form.secretOnce")}</p>
          </div>
        </div>
      </Modal>
    );
  }

  const badField = fieldOf(error);
  const hasUrl = url.trim() !== "";

  return (
    <Modal
      title={mode === "create" ? t("form.createTitle") : t("form.editTitle")}
      onClose={onClose}
      dismissable={!busy}
      footer={
        <>
          <Button onClick={onClose} disabled={busy}>
            {t("common.cancel")}
          </Button>
          <Button type="submit" form={formId} variant="primary" loading={busy} disabled={loading || loadError !== null}>
            {mode === "create" ? t("form.create") : t("form.save")}
          </Button>
        </>
      }
    >
      {loading ? (
        <div className="flex justify-center py-6">
          <Spinner />
        </div>
      ) : (
        <form id={formId} onSubmit={submit} noValidate className="space-y-4">
          <ErrorNote error={loadError} />
          <Field
            label={t("form.name")}
            name="session_name"
            value={name}
            onChange={(e) => {
              setName(e.target.value);
              setNameMissing(false);
            }}
            maxLength={100}
            required
            autoComplete="off"
            placeholder={t("form.namePlaceholder")}
            error={nameMissing ? t("form.nameRequired") : badField === "session_name" ? errorMessage(error) : undefined}
          />
          <Field
            label={t("form.webhookUrl")}
            name="webhook_url"
            type="url"
            inputMode="url"
            value={url}
            onChange={(e) => setUrl(e.target.value)}
            autoComplete="off"
            spellCheck={false}
            placeholder="https://n8n.example.com/webhook/whatsapp"
            hint={t("form.webhookHint")}
            error={badField === "webhook_url" ? errorMessage(error) : undefined}
          />
          {mode === "edit" && hasUrl && (
            <>
              <fieldset className="space-y-2">
                <legend className="text-sm font-medium text-slate-800">{t("form.events")}</legend>
                {WEBHOOK_EVENTS.map((ev) => (
                  <label key={ev} className="flex items-start gap-2 text-sm text-slate-700">
                    <input
                      type="checkbox"
                      className="mt-0.5 size-4 accent-emerald-600"
                      checked={events.includes(ev)}
                      onChange={(e) =>
                        setEvents((list) =>
                          e.target.checked ? WEBHOOK_EVENTS.filter((x) => x === ev || list.includes(x)) : list.filter((x) => x !== ev),
                        )
                      }
                    />
                    <span>
                      <span className="font-mono text-xs text-slate-900">{ev}</span>
                      <span className="block text-xs text-slate-500">{t(`event.${ev}`)}</span>
                    </span>
                  </label>
                ))}
                {badField === "webhook_events" && <p className="text-xs text-red-700">{errorMessage(error)}</p>}
              </fieldset>
              <label className="flex items-start gap-2 text-sm text-slate-700">
                <input
                  type="checkbox"
                  className="mt-0.5 size-4 accent-emerald-600"
                  checked={rotate}
                  onChange={(e) => setRotate(e.target.checked)}
                />
                <span>
                  {t("form.rotate")}
                  <span className="block text-xs text-slate-500">{t("form.rotateHint")}</span>
                </span>
              </label>
            </>
          )}
          {error !== null && badField === null && <ErrorNote error={error} />}
        </form>
      )}
    </Modal>
  );
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : "";
}
