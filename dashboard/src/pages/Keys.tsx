// /keys — the user's API keys (docs/contract/api-v1.md §5): create (the key is shown once),
// list, revoke.
import clsx from "clsx";
import { KeyRound, TriangleAlert } from "lucide-react";
import { useEffect, useState, type FormEvent } from "react";
import { api, type ApiKey } from "../api";
import { PageHeader } from "../components/Layout";
import { formatDateTime } from "../components/format";
import { Button, Card, ConfirmDialog, CopyButton, EmptyState, ErrorNote, Field, Spinner, usePageTitle } from "../components/ui";
import { useT } from "../i18n";
import { TableScroll } from "./analytics/TableScroll";

const MAX_NAME = 100;

function NewKey({ created, onDone }: { created: ApiKey; onDone: () => void }) {
  const t = useT();
  return (
    <div data-testid="new-key-box" role="region" aria-label={t("keys.new.title")} className="rounded-lg border border-amber-300 bg-amber-50 p-4">
      <p className="flex items-start gap-2 text-sm font-medium text-amber-900">
        <TriangleAlert aria-hidden="true" className="mt-0.5 size-4 shrink-0" />
        {t("keys.new.warning")}
      </p>
      <div className="mt-3 flex flex-wrap items-center gap-2">
        <code data-testid="new-key" className="min-w-0 flex-1 break-all rounded-md border border-amber-200 bg-white px-3 py-2 font-mono text-sm text-slate-900 select-all">
          {created.key}
        </code>
        <CopyButton text={created.key ?? ""} />
      </div>
      <div className="mt-3 flex justify-end">
        <Button size="sm" onClick={onDone}>
          {t("keys.new.done")}
        </Button>
      </div>
    </div>
  );
}

function KeyRow({ k, onRevoke }: { k: ApiKey; onRevoke: (k: ApiKey) => void }) {
  const t = useT();
  const revoked = Boolean(k.revoked_at);
  const td = "whitespace-nowrap px-3 py-2";
  return (
    <tr data-testid="key-row" data-key-id={k.id} data-revoked={revoked ? "true" : "false"} className={clsx(revoked && "text-slate-500")}>
      <td className="px-3 py-2">
        <span className={clsx("break-words", k.name ? "font-medium" : "text-slate-400")}>{k.name || t("keys.unnamed")}</span>
      </td>
      <td className={clsx(td, "font-mono text-xs")}>{k.prefix}…</td>
      <td className={td}>
        <time dateTime={k.created_at}>{formatDateTime(k.created_at)}</time>
      </td>
      <td className={td}>{k.last_used_at ? <time dateTime={k.last_used_at}>{formatDateTime(k.last_used_at)}</time> : t("keys.never")}</td>
      <td className={td}>
        {revoked ? (
          <span className="inline-flex rounded-full bg-slate-100 px-2 py-0.5 text-xs font-medium text-slate-700 ring-1 ring-inset ring-slate-500/30">
            {t("keys.revokedAt", { when: formatDateTime(k.revoked_at) })}
          </span>
        ) : (
          <span className="inline-flex rounded-full bg-emerald-50 px-2 py-0.5 text-xs font-medium text-emerald-800 ring-1 ring-inset ring-emerald-600/30">
            {t("keys.active")}
          </span>
        )}
      </td>
      <td className={clsx(td, "text-right")}>
        {!revoked && (
          <Button size="sm" variant="danger" onClick={() => onRevoke(k)} title={t("keys.revokeHint", { name: k.name || k.prefix })}>
            {t("keys.revoke")}
          </Button>
        )}
      </td>
    </tr>
  );
}

export default function Keys() {
  const t = useT();
  usePageTitle(t("keys.title"));
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [listError, setListError] = useState<unknown>(null);
  const [reloads, setReloads] = useState(0);
  const [name, setName] = useState("");
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<unknown>(null);
  const [created, setCreated] = useState<ApiKey | null>(null);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);

  useEffect(() => {
    let live = true;
    api<ApiKey[]>("GET", "/api/v1/keys").then(
      (list) => {
        if (!live) return;
        setKeys(list ?? []);
        setListError(null);
      },
      (e) => live && setListError(e),
    );
    return () => {
      live = false;
    };
  }, [reloads]);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    const clean = name.trim();
    if (clean.length > MAX_NAME) {
      setCreateError(t("keys.nameTooLong", { max: MAX_NAME }));
      return;
    }
    setCreating(true);
    setCreateError(null);
    try {
      const key = await api<ApiKey>("POST", "/api/v1/keys", clean ? { name: clean } : {});
      setCreated(key);
      setName("");
      setReloads((n) => n + 1);
    } catch (err) {
      setCreateError(err);
    } finally {
      setCreating(false);
    }
  };

  const revoke = async (k: ApiKey) => {
    await api("DELETE", `/api/v1/keys/${encodeURIComponent(k.id)}`);
    setReloads((n) => n + 1);
  };

  const th = "whitespace-nowrap px-3 py-2 text-left font-medium";
  return (
    <>
      <PageHeader title={t("keys.title")} description={t("keys.description")} />
      <div className="space-y-6">
        <Card title={t("keys.create.title")}>
          <form onSubmit={create} className="flex flex-wrap items-start gap-3">
            <Field
              label={t("keys.name")}
              hint={t("keys.nameHint")}
              value={name}
              onChange={(e) => setName(e.target.value)}
              maxLength={MAX_NAME}
              autoComplete="off"
              className="w-full sm:w-80"
            />
            <Button type="submit" variant="primary" loading={creating} icon={<KeyRound aria-hidden="true" className="size-4" />} className="sm:mt-6">
              {t("keys.create")}
            </Button>
          </form>
          <ErrorNote error={createError} className="mt-3" />
          {created && (
            <div className="mt-4">
              <NewKey created={created} onDone={() => setCreated(null)} />
            </div>
          )}
        </Card>

        <Card title={t("keys.list.title")}>
          <ErrorNote error={listError} className="mb-3" onRetry={() => setReloads((n) => n + 1)} />
          {keys === null ? (
            !listError && <Spinner />
          ) : keys.length === 0 ? (
            <EmptyState testId="keys-empty" title={t("keys.none")}>
              {t("keys.noneHint")}
            </EmptyState>
          ) : (
            <TableScroll label={t("keys.list.title")}>
              <table className="w-full min-w-[40rem] text-sm">
                <thead className="border-b border-slate-200 text-slate-600">
                  <tr>
                    <th scope="col" className={th}>
                      {t("keys.col.name")}
                    </th>
                    <th scope="col" className={th}>
                      {t("keys.col.prefix")}
                    </th>
                    <th scope="col" className={th}>
                      {t("keys.col.created")}
                    </th>
                    <th scope="col" className={th}>
                      {t("keys.col.lastUsed")}
                    </th>
                    <th scope="col" className={th}>
                      {t("keys.col.status")}
                    </th>
                    <th scope="col" className={clsx(th, "text-right")}>
                      <span className="sr-only">{t("keys.col.actions")}</span>
                    </th>
                  </tr>
                </thead>
                <tbody className="divide-y divide-slate-100">
                  {keys.map((k) => (
                    <KeyRow key={k.id} k={k} onRevoke={setRevoking} />
                  ))}
                </tbody>
              </table>
            </TableScroll>
          )}
        </Card>
      </div>

      {revoking && (
        <ConfirmDialog
          title={t("keys.confirm.title")}
          message={t("keys.confirm.message", { name: revoking.name || revoking.prefix })}
          confirmLabel={t("keys.revoke")}
          onConfirm={() => revoke(revoking)}
          onClose={() => setRevoking(null)}
        />
      )}
    </>
  );
}
