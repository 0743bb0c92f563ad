{{- /* What the two CSI drivers share: the controller Deployment with the upstream sidecars and
its RBAC, and the node DaemonSet with node-driver-registrar. Each takes
(dict "ctx" $ "kind" "block"|"fs" "v" <the driver's values>). */ -}}

{{- define "cairn.csi.controller" -}}
{{- $ctx := .ctx -}}
{{- $v := .v -}}
{{- $kind := .kind -}}
{{- $comp := printf "csi-%s-controller" $kind -}}
{{- $name := printf "%s-%s" (include "cairn.fullname" $ctx) $comp -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
---
# What the sidecars need cluster-wide: the provisioner, {{ if eq $kind "block" }}the attacher, {{ end }}the snapshotter and the resizer.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}-{{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
rules:
  - apiGroups: [""]
    resources: [persistentvolumes]
    verbs: [get, list, watch, create, delete, patch]
  - apiGroups: [""]
    resources: [persistentvolumeclaims]
    verbs: [get, list, watch, update]
  - apiGroups: [""]
    resources: [persistentvolumeclaims/status]
    verbs: [patch]
  - apiGroups: [""]
    resources: [events]
    verbs: [list, watch, create, update, patch]
  - apiGroups: [""]
    resources: [pods, nodes]
    verbs: [get, list, watch]
  - apiGroups: [storage.k8s.io]
    resources: [storageclasses, csinodes, volumeattributesclasses]
    verbs: [get, list, watch]
  - apiGroups: [storage.k8s.io]
    resources: [volumeattachments]
    verbs: [get, list, watch{{ if eq $kind "block" }}, patch{{ end }}]
  {{- if eq $kind "block" }}
  - apiGroups: [storage.k8s.io]
    resources: [volumeattachments/status]
    verbs: [patch]
  {{- end }}
  - apiGroups: [snapshot.storage.k8s.io]
    resources: [volumesnapshotclasses, volumesnapshots]
    verbs: [get, list, watch]
  - apiGroups: [snapshot.storage.k8s.io]
    resources: [volumesnapshotcontents]
    verbs: [get, list, watch, update, patch]
  - apiGroups: [snapshot.storage.k8s.io]
    resources: [volumesnapshotcontents/status]
    verbs: [update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}-{{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}-{{ $ctx.Release.Namespace }}
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ $ctx.Release.Namespace }}
---
# Leader election of the sidecars, in the release namespace only.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, watch, list, delete, update, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ $ctx.Release.Namespace }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
spec:
  replicas: {{ $v.controller.replicas }}
  selector:
    matchLabels:
      {{- include "cairn.selector" (dict "ctx" $ctx "component" $comp) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 8 }}
    spec:
      serviceAccountName: {{ $name }}
      {{- include "cairn.imagePullSecrets" $ctx | nindent 6 }}
      {{- with $v.controller.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.controller.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: csi-{{ $kind }}
          image: {{ include "cairn.image" $ctx }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          command: [csi-{{ $kind }}]
          args:
            - --endpoint=unix:///csi/csi.sock
            - --controller=true
            - --driver-name={{ $v.driverName }}
            - --meta={{ include "cairn.metaEndpoints" $ctx }}
            {{- if eq $kind "block" }}
            # Every volume keeps as many copies as the pool does.
            - --default-replicas={{ $ctx.Values.storage.replicas }}
            {{- end }}
            - --http-listen=0.0.0.0:{{ if eq $kind "block" }}7790{{ else }}7791{{ end }}
            - --log={{ $ctx.Values.logLevel }}
            {{- include "cairn.tlsArgs" $ctx | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ if eq $kind "block" }}7790{{ else }}7791{{ end }}
            - name: healthz
              containerPort: 9808
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 5
          resources:
            {{- toYaml $v.controller.resources | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
            {{- include "cairn.tlsMount" $ctx | nindent 12 }}
        - name: csi-provisioner
          image: {{ $ctx.Values.sidecars.provisioner }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --leader-election
            - --leader-election-namespace={{ $ctx.Release.Namespace }}
            - --extra-create-metadata
            - --timeout=120s
            {{- if eq $kind "block" }}
            - --default-fstype={{ $v.storageClass.fsType }}
            {{- end }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- if eq $kind "block" }}
        - name: csi-attacher
          image: {{ $ctx.Values.sidecars.attacher }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --leader-election
            - --leader-election-namespace={{ $ctx.Release.Namespace }}
            - --timeout=120s
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        {{- end }}
        - name: csi-snapshotter
          image: {{ $ctx.Values.sidecars.snapshotter }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --leader-election
            - --leader-election-namespace={{ $ctx.Release.Namespace }}
            - --extra-create-metadata
            - --timeout=120s
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        - name: csi-resizer
          image: {{ $ctx.Values.sidecars.resizer }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --leader-election
            - --leader-election-namespace={{ $ctx.Release.Namespace }}
            - --timeout=120s
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
        - name: liveness-probe
          image: {{ $ctx.Values.sidecars.livenessprobe }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --health-port=9808
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
      volumes:
        - name: socket-dir
          emptyDir: {}
        {{- include "cairn.tlsVolume" $ctx | nindent 8 }}
{{- end -}}

{{- define "cairn.csi.node" -}}
{{- $ctx := .ctx -}}
{{- $v := .v -}}
{{- $kind := .kind -}}
{{- $comp := printf "csi-%s-node" $kind -}}
{{- $name := printf "%s-%s" (include "cairn.fullname" $ctx) $comp -}}
{{- $kubelet := $ctx.Values.kubeletDir -}}
{{- $sock := printf "%s/plugins/%s" $kubelet $v.driverName -}}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "cairn.selector" (dict "ctx" $ctx "component" $comp) | nindent 6 }}
  # The node plugin's pod hosts the processes serving this node's mounted volumes.
  updateStrategy:
    type: {{ $v.node.updateStrategy }}
    {{- if eq $v.node.updateStrategy "RollingUpdate" }}
    rollingUpdate:
      maxUnavailable: 1
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "cairn.labels" (dict "ctx" $ctx "component" $comp) | nindent 8 }}
    spec:
      # The node plugin needs no Kubernetes API access.
      automountServiceAccountToken: false
      priorityClassName: system-node-critical
      {{- include "cairn.imagePullSecrets" $ctx | nindent 6 }}
      nodeSelector:
        kubernetes.io/os: linux
        {{- with $v.node.nodeSelector }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.node.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: csi-{{ $kind }}
          image: {{ include "cairn.image" $ctx }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          command: [csi-{{ $kind }}]
          args:
            - --endpoint=unix:///csi/csi.sock
            - --controller=false
            - --node-id=$(NODE_NAME)
            - --driver-name={{ $v.driverName }}
            - --meta={{ include "cairn.metaEndpoints" $ctx }}
            - --state-dir={{ $v.node.stateDir }}
            {{- if eq $kind "block" }}
            - --nbd-export={{ $v.node.nbdExport }}
            {{- end }}
            - --read-cache-mib={{ $v.node.readCacheMiB }}
            - --http-listen=0.0.0.0:{{ if eq $kind "block" }}7790{{ else }}7791{{ end }}
            - --log={{ $ctx.Values.logLevel }}
            {{- include "cairn.tlsArgs" $ctx | nindent 12 }}
          env:
            - name: NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName
          # Mounting (FUSE, {{ if eq $kind "block" }}loop devices, mkfs, {{ end }}bind mounts into pods) needs privilege.
          securityContext:
            privileged: true
            capabilities:
              add: [SYS_ADMIN]
            allowPrivilegeEscalation: true
          ports:
            - name: http
              containerPort: {{ if eq $kind "block" }}7790{{ else }}7791{{ end }}
            - name: healthz
              containerPort: 9808
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 5
          resources:
            {{- toYaml $v.node.resources | nindent 12 }}
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
            - name: kubelet-dir
              mountPath: {{ $kubelet }}
              mountPropagation: Bidirectional
            - name: state-dir
              mountPath: {{ $v.node.stateDir }}
              mountPropagation: Bidirectional
            {{- if eq $kind "block" }}
            - name: dev
              mountPath: /dev
            - name: modules
              mountPath: /lib/modules
              readOnly: true
            {{- else }}
            - name: fuse
              mountPath: /dev/fuse
            {{- end }}
            {{- include "cairn.tlsMount" $ctx | nindent 12 }}
        - name: node-driver-registrar
          image: {{ $ctx.Values.sidecars.registrar }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --kubelet-registration-path={{ $sock }}/csi.sock
          livenessProbe:
            exec:
              command:
                - /csi-node-driver-registrar
                - --kubelet-registration-path={{ $sock }}/csi.sock
                - --mode=kubelet-registration-probe
            initialDelaySeconds: 30
            timeoutSeconds: 15
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
            - name: registration-dir
              mountPath: /registration
        - name: liveness-probe
          image: {{ $ctx.Values.sidecars.livenessprobe }}
          imagePullPolicy: {{ $ctx.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --health-port=9808
          volumeMounts:
            - name: socket-dir
              mountPath: /csi
      volumes:
        - name: socket-dir
          hostPath:
            path: {{ $sock }}
            type: DirectoryOrCreate
        - name: registration-dir
          hostPath:
            path: {{ $kubelet }}/plugins_registry
            type: Directory
        - name: kubelet-dir
          hostPath:
            path: {{ $kubelet }}
            type: Directory
        - name: state-dir
          hostPath:
            path: {{ $v.node.stateDir }}
            type: DirectoryOrCreate
        {{- if eq $kind "block" }}
        - name: dev
          hostPath:
            path: /dev
            type: Directory
        - name: modules
          hostPath:
            path: /lib/modules
            type: Directory
        {{- else }}
        - name: fuse
          hostPath:
            path: /dev/fuse
            type: CharDevice
        {{- end }}
        {{- include "cairn.tlsVolume" $ctx | nindent 8 }}
{{- end -}}
