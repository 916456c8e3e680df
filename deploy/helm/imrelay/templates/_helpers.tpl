{{- define "imrelay.name" -}}{{ .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end }}

{{- define "imrelay.fullname" -}}
{{- if .Values.fullnameOverride }}{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "imrelay.name" . }}
{{- if contains $name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}
{{- end }}

{{- define "imrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ .Values.serviceAccount.name | default (include "imrelay.fullname" .) }}
{{- else }}{{ .Values.serviceAccount.name | default "default" }}{{ end }}
{{- end }}

{{- /* Objects of an API a cluster may lack (CRDs): rendered only where the cluster serves it, else the
       install fails naming the value that asked for it. Call with (dict "root" $ "api" "group/version"
       "kind" "Kind" "value" "the.value.enabled" "from" "who provides it"). */ -}}
{{- define "imrelay.requireApi" -}}
{{- $caps := .root.Capabilities.APIVersions -}}
{{- if not (or ($caps.Has (printf "%s/%s" .api .kind)) ($caps.Has .api)) -}}
{{- fail (printf "%s=true needs the %s API (%s), which this cluster does not serve: install %s first, or set %s=false (helm template: pass --api-versions %s/%s)" .value .kind .api .from .value .api .kind) -}}
{{- end -}}
{{- end }}

{{- /* The checksum of the Secrets the pods read: a changed secret rolls them. The chart's own Secret
       from its values; an existing Secret as the cluster has it (on install and upgrade; nothing offline). */ -}}
{{- define "imrelay.secretsChecksum" -}}
{{- $parts := list (toYaml .Values.secrets.values) -}}
{{- with .Values.secrets.existingSecret }}
{{- $found := lookup "v1" "Secret" $.Release.Namespace . -}}
{{- $parts = append $parts (printf "%s:%s" . (toYaml (($found | default dict).data | default dict))) -}}
{{- end }}
{{- if .Values.helmTest.enabled }}{{ $parts = append $parts (include "imrelay.selftestSecret" .) }}{{ end }}
{{- join "\n" $parts | sha256sum -}}
{{- end }}

{{- define "imrelay.labels" -}}
app.kubernetes.io/name: {{ include "imrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "imrelay.selector" -}}
app.kubernetes.io/name: {{ include "imrelay.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "imrelay.image" -}}
{{- if .Values.image.digest }}{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else }}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{ end }}
{{- end }}

{{- define "imrelay.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}
{{- else if .Values.secrets.values }}{{ include "imrelay.fullname" . }}-env{{ end }}
{{- end }}

{{- /* the self-test bot's secrets: kept from the cluster across upgrades, else derived from helmTest.seed
       and the release (the same on every render, so `helm template` does not change them) */ -}}
{{- define "imrelay.selftestSecret" -}}
{{- $name := printf "%s-selftest" (include "imrelay.fullname" .) -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if and $old $old.data }}{{ $old.data | toYaml }}
{{- else }}
{{- $base := printf "%s/%s/%s" .Values.helmTest.seed .Release.Namespace .Release.Name }}
HELM_SELFTEST_TOKEN: {{ printf "token:%s" $base | sha256sum | trunc 24 | b64enc }}
HELM_SELFTEST_AES_KEY: {{ printf "aes:%s" $base | sha256sum | trunc 43 | b64enc }}
{{- end }}
{{- end }}

{{- /* the NATS every service connects to: the bundled cluster's client Service, or nats.url */ -}}
{{- define "imrelay.natsUrl" -}}
{{- if .Values.nats.enabled }}{{ ternary "tls" "nats" .Values.nats.tls.enabled }}://{{ printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}:4222
{{- else }}{{ .Values.nats.url }}{{ end }}
{{- end }}

{{- /* where each service's NATS password is: the bundled NATS's generated Secret, or nats.auth.existingSecret */ -}}
{{- define "imrelay.natsAuthSecret" -}}
{{- if .Values.nats.auth.existingSecret }}{{ .Values.nats.auth.existingSecret }}
{{- else if and .Values.nats.enabled .Values.nats.auth.enabled }}{{ printf "%s-nats-auth" .Release.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- /* the Secret holding the CA (ca.crt) that signed the NATS servers' certificates */ -}}
{{- define "imrelay.natsTlsSecret" -}}
{{- if .Values.nats.tls.caSecret }}{{ .Values.nats.tls.caSecret }}
{{- else if and .Values.nats.enabled .Values.nats.tls.enabled }}{{ .Values.nats.tls.secretName | default (printf "%s-nats-tls" .Release.Name | trunc 63 | trimSuffix "-") }}{{ end }}
{{- end }}

{{- /* a component's NATS user: llm-worker connects as the worker */ -}}
{{- define "imrelay.natsService" -}}{{ ternary "worker" . (eq . "llm-worker") }}{{- end }}

{{- define "imrelay.configYaml" -}}
{{- $backends := deepCopy .Values.config.backends -}}
{{- $bots := .Values.config.bots -}}
{{- if .Values.helmTest.enabled }}
{{- $_ := set $backends "helm-selftest" (dict "kind" "echo") }}
{{- $selftest := dict "id" "helm-selftest" "platform" "wecom_group_robot" "backend" "helm-selftest"
      "api_base" (printf "http://%s-selftest:8090" (include "imrelay.fullname" .))
      "credentials" (dict "token" "${HELM_SELFTEST_TOKEN}" "encoding_aes_key" "${HELM_SELFTEST_AES_KEY}") }}
{{- $bots = append $bots $selftest }}
{{- end }}
{{- $nats := dict "url" (include "imrelay.natsUrl" .) "replicas" .Values.nats.streamReplicas -}}
{{- if include "imrelay.natsTlsSecret" . }}{{ $_ := set $nats "tls" (dict "ca_file" "/etc/imrelay-nats-tls/ca.crt") }}{{ end }}
{{- $cfg := merge (dict "nats" $nats
                        "backends" $backends "bots" $bots)
                  (deepCopy .Values.config.extra) -}}
{{ toYaml $cfg }}
{{- end }}
