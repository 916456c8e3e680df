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

{{- define "imrelay.configYaml" -}}
{{- $cfg := merge (dict "nats" (dict "url" .Values.nats.url "replicas" .Values.nats.streamReplicas)
                        "backends" .Values.config.backends "bots" .Values.config.bots)
                  (deepCopy .Values.config.extra) -}}
{{ toYaml $cfg }}
{{- end }}
