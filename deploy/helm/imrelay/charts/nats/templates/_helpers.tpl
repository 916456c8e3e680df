{{- define "nats.fullname" -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nats.selector" -}}
app.kubernetes.io/name: nats
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nats.labels" -}}
{{ include "nats.selector" . }}
app.kubernetes.io/part-of: imrelay
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "nats.image" -}}
{{- if .Values.image.digest }}{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else }}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{ end }}
{{- end }}

{{- /* nats.conf: every node reads the same file; $POD_NAME names each one */ -}}
{{- define "nats.conf" -}}
{{- $full := include "nats.fullname" . -}}
server_name: $POD_NAME
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
pid_file: /var/run/nats/nats.pid
# a stopping node (preStop: lame-duck mode) moves its clients and stream leaders away before it exits
lame_duck_grace_period: 10s
lame_duck_duration: 30s
jetstream {
  store_dir: /data
  max_file_store: {{ .Values.jetstream.maxFileStore }}
  max_memory_store: {{ .Values.jetstream.maxMemoryStore }}
}
{{- if gt (int .Values.replicas) 1 }}
cluster {
  name: {{ $full }}
  listen: 0.0.0.0:6222
  no_advertise: true
  routes: [
    {{- range $i, $_ := until (int .Values.replicas) }}
    nats://{{ $full }}-{{ $i }}.{{ $full }}-headless:6222
    {{- end }}
  ]
}
{{- end }}
{{- end }}
