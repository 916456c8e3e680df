{{- define "imrelay.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "imrelay.labels" -}}
app.kubernetes.io/name: imrelay
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "imrelay.selector" -}}
app.kubernetes.io/name: imrelay
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

{{- /* the self-test bot's secrets: random at install, kept across upgrades */ -}}
{{- define "imrelay.selftestSecret" -}}
{{- $name := printf "%s-selftest" (include "imrelay.fullname" .) -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if $old }}{{ $old.data | toYaml }}
{{- else }}
HELM_SELFTEST_TOKEN: {{ randAlphaNum 24 | b64enc }}
HELM_SELFTEST_AES_KEY: {{ randAlphaNum 43 | b64enc }}
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
